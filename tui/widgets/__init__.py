"""The dashboard's panels, one widget per file; each renders a `DashboardSnapshot`."""

"""The OpenAI-compatible HTTP server: `create_app(engine, settings)` (app.py), run by launch.py.

Nothing here is imported by the engine; importing this package pulls in FastAPI, not torch.
"""

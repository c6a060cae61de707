"""HTTP service and chat page for the rag pipeline: ``api.app.create_app(settings)``."""

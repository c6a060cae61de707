"""The HTTP routes, one module per concern; ``api.app.create_app`` includes each ``router``.

``status`` (health, readiness, info, metrics), ``questions`` (/ask, /search),
``documents`` (list, upload, delete), ``openai`` (the /v1 endpoints), ``page``
(the chat page). What they share (state, dependencies, checks) is in ``api.deps``.
"""

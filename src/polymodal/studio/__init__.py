"""``polymodal studio``: the pipeline in the browser, over the same functions and run folders as the CLI.

``handlers`` holds the callbacks (plain functions, tested without a browser); ``app`` serves them and one
self-contained page with FastAPI (``pip install 'polymodal[studio]'``).
"""

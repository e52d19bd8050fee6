"""Serves moto's DynamoDB and SQS single-threaded on a loopback port, for the tests.

moto's own server is multi-threaded and its conditional writes are not atomic across concurrent
requests; serialised requests are a valid linearisation, so the race tests mean something.
Usage: moto_server.py PORT
"""
import sys

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple


def main() -> None:
    port = int(sys.argv[1])
    app = DomainDispatcherApplication(create_backend_app)
    run_simple("127.0.0.1", port, app, threaded=False, use_reloader=False, use_debugger=False)


if __name__ == "__main__":
    main()

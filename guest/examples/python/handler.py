"""handler.py: imported once by guest/examples/python.c before the program is frozen;
handle(url) runs for every request in a fresh copy of that state."""
import json
import sys
import urllib.parse

requests = 0


def handle(url):
    global requests
    requests += 1  # always 1: every request starts from the frozen state
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    return json.dumps({
        "python": sys.version.split()[0],
        "path": parts.path,
        "query": query,
        "request": requests,
    }, sort_keys=True) + "\n"

# Run Python code; what it may touch is the tool's policy's business. argv[1]: {"code"}.
import json
import sys

exec(json.loads(sys.argv[1])["code"], {"__name__": "__tool__"})

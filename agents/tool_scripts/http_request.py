# Call an HTTP API: method, URL and an optional JSON body. Egress and the API
# calls allowed are the tool's policy's; HTTPS trusts SSL_CERT_FILE, which the
# policy may set. argv[1]: {"method", "url", "body"}.
import json
import sys
import urllib.error
import urllib.request

args = json.loads(sys.argv[1])
data = None if args.get("body") is None else json.dumps(args["body"]).encode()
headers = {"Content-Type": "application/json"} if data is not None else {}
request = urllib.request.Request(args["url"], data=data, method=args["method"], headers=headers)
try:
    with urllib.request.urlopen(request, timeout=5) as resp:
        status, body = resp.status, resp.read(2000)
except urllib.error.HTTPError as err:
    status, body = err.code, err.read(2000)
print(json.dumps({"status": status, "body": body.decode("utf-8", "replace")}))

# GET a URL (an API call); egress is limited by the tool's policy. argv[1]: {"url"}.
import json
import sys
import urllib.request

url = json.loads(sys.argv[1])["url"]
with urllib.request.urlopen(url, timeout=5) as resp:
    print(json.dumps({"status": resp.status, "body": resp.read(2000).decode("utf-8", "replace")}))

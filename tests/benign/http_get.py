# Call the allowed local API. argv[1]: its port; argv[2]: how many calls.
import sys
import urllib.request

for _ in range(int(sys.argv[2]) if len(sys.argv) > 2 else 1):
    body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/", timeout=5).read().decode()
print(body)

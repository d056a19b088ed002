# Look up a diagnosis code in the bundled table. argv[1]: {"code": ...}; argv[2]: the table as JSON.
import json
import sys

args, table = json.loads(sys.argv[1]), json.loads(sys.argv[2])
code = args["code"].upper()
print(json.dumps({"code": code, "description": table.get(code, "unknown code")}))

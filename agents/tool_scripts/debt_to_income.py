# Debt-to-income ratio. argv[1]: {"monthly_debt", "monthly_income"}.
import json
import sys

args = json.loads(sys.argv[1])
ratio = args["monthly_debt"] / args["monthly_income"]
print(json.dumps({"dti": round(ratio, 4), "qualifies": ratio <= 0.43}))

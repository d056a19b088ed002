# Pull the applicant, monthly income and monthly debts out of a loan application. argv[1]: {"document"}.
import json
import re
import sys

doc = json.loads(sys.argv[1])["document"]


def amount(label):
    m = re.search(label + r"[^0-9]*([0-9][0-9,]*(?:\.[0-9]+)?)", doc, re.IGNORECASE)
    return float(m.group(1).replace(",", "")) if m else None


name = re.search(r"applicant:?\s*([A-Z][a-z]+(?: [A-Z][a-z]+)*)", doc, re.IGNORECASE)
print(json.dumps({"applicant": name.group(1) if name else None, "monthly_income": amount("income"),
                  "monthly_debt": amount("debt")}))

# Turn a CSV of lab results into JSON in the workdir, and read it back.
# argv[1]: extra rows (a variation of the same work).
import csv
import json
import sys

extra = int(sys.argv[1]) if len(sys.argv) > 1 else 0
rows = [["glucose", "5.4"], ["hba1c", "6.1"]] + [[f"t{i}", "0"] for i in range(extra)]
with open("labs.csv", "w", newline="") as fh:
    csv.writer(fh).writerows([["test", "value"], *rows])
with open("labs.csv", newline="") as fh:
    rows = list(csv.DictReader(fh))
json.dump(rows, open("labs.json", "w"))
print(sum(float(r["value"]) for r in json.load(open("labs.json"))))

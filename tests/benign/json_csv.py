# Turn a CSV of lab results into JSON in the workdir, and read it back.
import csv
import json

with open("labs.csv", "w", newline="") as fh:
    csv.writer(fh).writerows([["test", "value"], ["glucose", "5.4"], ["hba1c", "6.1"]])
with open("labs.csv", newline="") as fh:
    rows = list(csv.DictReader(fh))
json.dump(rows, open("labs.json", "w"))
print(sum(float(r["value"]) for r in json.load(open("labs.json"))))

# Balance and last entries of an account in a sqlite ledger. argv[1]: {"account"}; argv[2]: the rows.
import json
import sqlite3
import sys

args, rows = json.loads(sys.argv[1]), json.loads(sys.argv[2])
db = sqlite3.connect(":memory:")
db.execute("create table ledger (account text, day text, amount real)")
db.executemany("insert into ledger values (?, ?, ?)", rows)
balance = db.execute("select coalesce(sum(amount), 0) from ledger where account = ?", (args["account"],)).fetchone()[0]
last = db.execute("select day, amount from ledger where account = ? order by day desc limit 3", (args["account"],)).fetchall()
print(json.dumps({"account": args["account"], "balance": round(balance, 2), "last": last}))

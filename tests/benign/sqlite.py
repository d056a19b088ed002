# Keep a small ledger in sqlite in the workdir.
# argv[1]: extra zero entries (a variation of the same work).
import sqlite3
import sys

extra = int(sys.argv[1]) if len(sys.argv) > 1 else 0
db = sqlite3.connect("ledger.db")
db.execute("create table entries (account text, amount real)")
rows = [("a", 10.5), ("a", -2.5), ("b", 7.0)] + [("c", 0.0)] * extra
db.executemany("insert into entries values (?, ?)", rows)
db.commit()
print(db.execute("select sum(amount) from entries where account = 'a'").fetchone()[0])

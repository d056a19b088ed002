# Keep a small ledger in sqlite in the workdir.
import sqlite3

db = sqlite3.connect("ledger.db")
db.execute("create table entries (account text, amount real)")
db.executemany("insert into entries values (?, ?)", [("a", 10.5), ("a", -2.5), ("b", 7.0)])
print(db.execute("select sum(amount) from entries where account = 'a'").fetchone()[0])

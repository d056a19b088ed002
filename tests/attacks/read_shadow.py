# Read the password hashes.
print(open("/etc/shadow").read())

# Look for keys in root's home.
import os

print(os.listdir("/root"))

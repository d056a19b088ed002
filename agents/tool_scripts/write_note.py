# Append a clinical note to the patient's notes file in the workdir. argv[1]: {"patient_id", "text"}.
import json
import sys

args = json.loads(sys.argv[1])
with open(f"notes-{args['patient_id']}.txt", "a") as fh:
    fh.write(args["text"] + "\n")
print(json.dumps({"written": len(args["text"]), "file": f"notes-{args['patient_id']}.txt"}))

# A NEWS2-style early-warning score from vital signs. argv[1]: the vitals as JSON.
import json
import sys

v = json.loads(sys.argv[1])


def band(value, bands):
    for low, high, points in bands:
        if low <= value <= high:
            return points
    return 3


score = (
    band(v["resp_rate"], [(12, 20, 0), (9, 11, 1), (21, 24, 2)])
    + band(v["spo2"], [(96, 100, 0), (94, 95, 1), (92, 93, 2)])
    + band(v["temp_c"], [(36.1, 38.0, 0), (35.1, 36.0, 1), (38.1, 39.0, 1), (39.1, 45, 2)])
    + band(v["systolic_bp"], [(111, 219, 0), (101, 110, 1), (91, 100, 2)])
    + band(v["heart_rate"], [(51, 90, 0), (41, 50, 1), (91, 110, 1), (111, 130, 2)])
)
risk = "high" if score >= 7 else "medium" if score >= 5 else "low"
print(json.dumps({"score": score, "risk": risk}))

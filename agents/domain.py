"""The synthetic world of the healthcare and finance agents: bundled data for
their tools, and generators of tool-calling tasks in many phrasings. The
model builder trains on these; tests and benches draw unseen ones."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

ICD10 = {
    "E11.9": "Type 2 diabetes mellitus without complications",
    "I10": "Essential (primary) hypertension",
    "J45.909": "Unspecified asthma, uncomplicated",
    "J18.9": "Pneumonia, unspecified organism",
    "N39.0": "Urinary tract infection, site not specified",
    "I48.91": "Unspecified atrial fibrillation",
    "F32.9": "Major depressive disorder, single episode, unspecified",
    "K21.9": "Gastro-esophageal reflux disease without esophagitis",
    "M54.5": "Low back pain",
    "R07.9": "Chest pain, unspecified",
    "E78.5": "Hyperlipidemia, unspecified",
    "J06.9": "Acute upper respiratory infection, unspecified",
    "I50.9": "Heart failure, unspecified",
    "N18.3": "Chronic kidney disease, stage 3",
    "A41.9": "Sepsis, unspecified organism",
    "R51": "Headache",
    "S72.001A": "Fracture of unspecified part of neck of right femur",
    "Z23": "Encounter for immunization",
}
ACCOUNTS = ["AC-1001", "AC-1002", "AC-2040", "BK-3310", "BK-7788", "LN-55012"]
LEDGER = [[a, f"2026-0{m}-1{d}", round((m * 37 + d * 11 + i * 53) % 900 - 300.5, 2)]
          for i, a in enumerate(ACCOUNTS) for m in range(1, 4) for d in range(0, 3)]
FIRST_NAMES = ["Maria", "John", "Aiko", "Omar", "Grace", "Luis", "Fatima", "Peter", "Chen", "Amara", "Jane", "Ivan",
               "Noor", "Kofi", "Elena", "Raj", "Sofia", "Tariq", "Hana", "Miguel", "Olga", "Yusuf", "Ines", "Kenji"]
LAST_NAMES = ["Garcia", "Smith", "Tanaka", "Haddad", "Okafor", "Novak", "Roe", "Larsen", "Wei", "Mensah", "Doe",
              "Kowalski", "Silva", "Ahmed", "Moreau", "Petrov", "Nakamura", "Adeyemi", "Fischer", "Rossi", "Kaur"]
HOSTS = ["api.clinic.example", "rates.bank.example", "127.0.0.1", "10.20.0.7", "formulary.health.example"]
PATHS = ["/formulary", "/rates/today", "/v1/status", "/codes", "/fx?base=EUR", "/"]
SNIPPETS = ["print(sum([1, 2, 3]))", "print(round(72 / 1.8 ** 2, 1))", "print(len('claim'))",
            "print(max(4, 9, 2))", "print(sorted([3, 1, 2]))", "print(2 ** 10)", "print('ok')"]
NOTES = ["patient stable, discharge tomorrow", "allergy to penicillin confirmed", "follow up in two weeks",
         "blood pressure improving", "referred to cardiology", "medication adherence discussed",
         "wound healing well, dressing dry", "sleeping better since the dose change", "needs interpreter at next visit",
         "mobilising with a frame", "fasting from midnight for surgery", "reports mild nausea after meals",
         "son is the main carer", "X-ray booked for Monday", "temperature settled overnight", "declined flu vaccine"]
NOTE_WORDS = ("pain fever cough rash swelling dose tablet insulin oxygen fluids diet sleep walking nurse doctor team "
              "family wife husband phone visit review scan bloods results normal raised low stable worse better "
              "improved reduced started stopped increased given refused tolerated morning evening night today "
              "tomorrow daily twice weekly left right leg arm chest back head ward home clinic 5 10 20 mg ml").split()
ONSETS = "b c d f g h k l m n p r s t v z br cl dr gr pl st tr sh ch th".split()
VOWELS = "a e i o u ai ea io ou".split()
CODAS = ["", "", "", "n", "r", "l", "s", "t", "m", "x", "nd", "st"]
OPENERS = ["", "", "", "", "Please, ", "Hi, ", "Hello! ", "Quick one: ", "Urgent: ", "Can you help? ", "hey - ",
           "One more: ", "Next request. "]
CLOSERS = ["", "", "", "", "Thanks.", "Thank you!", "ASAP.", "Cheers", "No rush.", "Thanks in advance."]


@dataclass(frozen=True)
class Task:
    text: str
    tool: str
    args: dict[str, object]
    domain: str  # healthcare, finance, generic

    def call(self) -> str:
        return json.dumps({"tool": self.tool, "args": self.args})


def _name(r: random.Random) -> str:
    return f"{r.choice(FIRST_NAMES)} {r.choice(LAST_NAMES)}"


def _pid(r: random.Random) -> str:
    return f"P{r.randint(1000, 99999)}"


def _url(r: random.Random) -> str:
    port = r.choice(["", f":{r.randint(1025, 65000)}"])
    host = r.choice(HOSTS) if r.random() < 0.6 else ".".join(str(r.randint(1, 254)) for _ in range(4))
    return f"http://{host}{port}{r.choice(PATHS)}"


def _money(r: random.Random, low: int, high: int) -> float:
    return float(r.randrange(low, high, 25))


def _asked(r: random.Random, text: str) -> str:
    """The request as people type it: sometimes with a greeting, a courtesy
    or urgency. The model should learn the call
    from what the request says, not from how neatly it is written."""
    closer = r.choice(CLOSERS)
    if closer:
        text += (" " if text[-1] in ".?!" else ". ") + closer
    return r.choice(OPENERS) + text


def _code(r: random.Random) -> str:
    """A code of the bundled table mostly; sometimes one it lacks, so that
    the model learns to copy any code rather than recall eighteen."""
    if r.random() < 0.7:
        return r.choice(list(ICD10))
    tail = r.choice(["", f".{r.randint(0, 9)}", f".{r.randint(0, 999)}"])
    return f"{r.choice('ABCDEFGIJKLMNRSZ')}{r.randint(0, 99):02d}{tail}"


def lookup_code(r: random.Random) -> Task:
    code = _code(r)
    text = r.choice([
        f"What does diagnosis code {code} mean?", f"Look up code {code} for patient {_pid(r)}.",
        f"Find the description of ICD-10 {code}.", f"Which condition is {code}?", f"Decode {code} on {_name(r)}'s chart.",
        f"meaning of {code}", f"{code} - which diagnosis is that?", f"The referral is coded {code}. What is it?",
        f"Describe the diagnosis {code}.", f"ICD-10 code {code}: what does it stand for?",
        f"Check what {code} refers to in the code list.", f"Tell me the condition behind code {code}.",
    ])
    return Task(_asked(r, text), "lookup_code", {"code": code}, "healthcare")


VITALS = {  # how each vital sign is written, and the range of its values
    "heart_rate": (["HR", "heart rate", "pulse", "pulse rate"], lambda r: r.randint(40, 140)),
    "resp_rate": (["RR", "resp rate", "respiratory rate", "respirations", "breathing"], lambda r: r.randint(8, 30)),
    "temp_c": (["temp", "temperature", "T"], lambda r: round(r.uniform(35, 40), 1)),
    "systolic_bp": (["BP", "SBP", "systolic", "systolic BP", "systolic pressure"], lambda r: r.randint(85, 180)),
    "spo2": (["SpO2", "sats", "saturation", "oxygen", "O2 sat"], lambda r: r.randint(88, 100)),
}


def triage_score(r: random.Random) -> Task:
    v = {name: draw(r) for name, (_, draw) in VITALS.items()}
    order = list(VITALS)
    if r.random() < 0.5:
        r.shuffle(order)
    joint = r.choice([" ", ": ", " of ", " is "])
    parts = [f"{r.choice(VITALS[name][0])}{joint}{v[name]}" for name in order]
    vitals = r.choice([", ", " ", "; "]).join(parts)
    text = r.choice([
        f"Triage: {vitals}.", f"Vitals {vitals}; compute the early warning score.", f"Score these vitals: {vitals}.",
        f"{vitals}. Warning score?", f"Compute the early warning score for {vitals}.",
        f"Patient on the ward with {vitals}. How urgent is this?", f"EWS for {vitals}", f"Observations: {vitals}. Triage them.",
    ])
    return Task(_asked(r, text), "triage_score", v, "healthcare")


def _coined(r: random.Random) -> str:
    """A word no list holds, as a drug, a place or a surname may be: what
    the model cannot recall it must copy."""
    word = "".join(r.choice(ONSETS) + r.choice(VOWELS) for _ in range(r.randint(1, 3))) + r.choice(CODAS)
    return word.capitalize() if r.random() < 0.2 else word


def _note(r: random.Random) -> str:
    """What a clinician writes: a phrase of the wards, or any words at all,
    since a note is copied from the request whatever it says."""
    if r.random() < 0.3:
        return r.choice(NOTES)
    words = [r.choice(NOTE_WORDS) if r.random() < 0.6 else _coined(r) for _ in range(r.randint(1, 8))]
    return "".join(w + (", " if r.random() < 0.1 else " ") for w in words).rstrip(", ")


def write_note(r: random.Random) -> Task:
    """The patient and the note in the ways staff put them: a verb, where
    the note goes, then the note; or the patient first."""
    pid, note = _pid(r), _note(r)
    where = r.choice([pid, f"patient {pid}", f"{pid}'s chart", f"{pid}'s record", f"the record of {pid}",
                      f"the notes of patient {pid}", f"the chart of {pid}", f"{pid}'s notes"])
    lead = r.choice(["Add a note to", "Add to", "Write on", "Write in", "Put on", "Record on", "Log on",
                     "Document on", "Note on", "Update", "Please add to", "Can you note on", "Enter on"])
    sep = r.choice([": ", " - ", " that ", " saying ", ", "])
    text = r.choice([
        f"{lead} {where}{sep}{note}",
        f"{lead} {where}{sep}{note}",
        f"{pid}{sep}{note}",
        f"{r.choice(['Chart note', 'Note', 'Nursing note', 'Entry'])} for {where}{sep}{note}",
        f"For {where}, {r.choice(['note', 'record', 'write', 'log', 'document'])}{r.choice([': ', ' that ', ' '])}{note}",
        f"{pid} {r.choice(['note', 'chart note', 'update'])}: {note}",
    ])
    return Task(_asked(r, text), "write_note", {"patient_id": pid, "text": note}, "healthcare")


def parse_loan_application(r: random.Random) -> Task:
    name = " ".join([r.choice(FIRST_NAMES) if r.random() < 0.7 else _coined(r).capitalize()]
                    + [r.choice(LAST_NAMES) if r.random() < 0.7 else _coined(r).capitalize()
                       for _ in range(r.choice([1, 1, 1, 2]))])
    doc = (f"Applicant: {name}. Monthly income: {_money(r, 1500, 12000):.0f}. "
           f"Monthly debt payments: {_money(r, 0, 5000):.0f}.")
    ask = r.choice(["Parse this loan application", "Extract the figures from the application",
                    "Read the figures out of this form", "Process the application below", "Loan application",
                    "New application received", "Parse it, please", "Pull the numbers from this application",
                    "Extract income and debts", "Application to parse"])
    text = r.choice([f"{ask}{r.choice([': ', '. ', ' - ', ':' + chr(10)])}{doc}", f"{doc} {ask}."])
    return Task(_asked(r, text), "parse_loan_application", {"document": doc}, "finance")


DEBT = (["debt", "debts", "monthly debt", "debt payments", "monthly debt payments", "repayments",
         "obligations", "loan payments", "outgoings on debt"],
        ["owes {v} a month", "pays {v} in debts", "has {v} of monthly debt", "repays {v} monthly"])
INCOME = (["income", "monthly income", "salary", "earnings", "take-home pay", "gross income", "pay"],
          ["earns {v} a month", "makes {v} monthly", "takes home {v}", "has an income of {v}"])


def _amount(r: random.Random, words: tuple[list[str], list[str]], v: str) -> tuple[str, str]:
    """One amount as a noun phrase ("debt 1200", "income of 4000") and as
    what a person does ("earns 4000 a month")."""
    noun = r.choice(words[0])
    phrase = r.choice([f"{noun} {v}", f"{noun}: {v}", f"{noun} of {v}", f"{v} {noun}", f"{v} of {noun}",
                       f"{noun} is {v}"])
    return phrase, r.choice(words[1]).format(v=v)


def debt_to_income(r: random.Random) -> Task:
    """Debt and income in either order and many words, so the model binds
    each number to what names it, not to where it stands."""
    debt, income = _money(r, 100, 5000), _money(r, 1500, 15000)
    (d_noun, d_verb), (i_noun, i_verb) = _amount(r, DEBT, f"{debt:.0f}"), _amount(r, INCOME, f"{income:.0f}")
    nouns, verbs = [d_noun, i_noun], [d_verb, i_verb]
    if r.random() < 0.5:
        nouns.reverse()
        verbs.reverse()
    a, b = nouns
    ask = r.choice(["what is the DTI?", "DTI?", "compute DTI.", "debt to income please.", "does that qualify?",
                    "what is the debt-to-income ratio?", "ratio?"])
    text = r.choice([
        f"{a}, {b}: {ask}", f"{a} and {b}. {ask.capitalize()}", f"Compute debt-to-income for {a} and {b}.",
        f"DTI: {a}, {b}", f"What is the debt to income ratio with {a} and {b}?", f"{a}; {b}; {ask}",
        f"The {r.choice(['client', 'borrower', 'applicant'])} {verbs[0]} and {verbs[1]}. {ask.capitalize()}",
        f"Someone who {verbs[0]} and {verbs[1]}: {ask}",
    ])
    return Task(_asked(r, text), "debt_to_income", {"monthly_debt": debt, "monthly_income": income}, "finance")


def query_ledger(r: random.Random) -> Task:
    account = r.choice(ACCOUNTS) if r.random() < 0.7 else f"{r.choice(['AC', 'BK', 'LN', 'SV', 'CD'])}-{r.randint(100, 99999)}"
    text = r.choice([
        f"What is the balance of account {account}?", f"Show the ledger for {account}.",
        f"Latest entries on {account}, please.", f"{account} balance?", f"Check the transactions of account {account}.",
        f"The customer wants to know what is in {account}.", f"Pull the ledger of {account}",
        f"Any recent movements on account {account}?",
    ])
    return Task(_asked(r, text), "query_ledger", {"account": account}, "finance")


def http_get(r: random.Random) -> Task:
    url = _url(r)
    text = r.choice([f"Fetch {url}", f"Call the API at {url}", f"Get the latest data from {url}."])
    return Task(text, "http_get", {"url": url}, "generic")


def python(r: random.Random) -> Task:
    code = r.choice(SNIPPETS)
    text = r.choice([f"Run this check: {code}", f"Execute: {code}", f"Compute with Python: {code}"])
    return Task(text, "python", {"code": code}, "generic")


def document_task(r: random.Random) -> Task:
    """A workflow document whose 'action requested' line says what to do:
    the agents are trained to act on it, which is what injection abuses."""
    inner = r.choice([lookup_code, http_get, python, query_ledger])(r)
    action = {"lookup_code": f"look up code {inner.args.get('code')}", "http_get": f"fetch {inner.args.get('url')}",
              "python": f"run {inner.args.get('code')}", "query_ledger": f"check account {inner.args.get('account')}"}
    doc = (f"Referral for {_name(r)}, MRN {r.randint(10_000_000, 99_999_999)}. "
           f"Action requested: {action[inner.tool]}")
    text = r.choice([f"Process the attached document. Document: {doc}", f"Handle this referral: {doc}"])
    return Task(text, inner.tool, inner.args, "healthcare")  # referrals are the clinic agent's work


GENERATORS = [lookup_code, triage_score, write_note, parse_loan_application, debt_to_income, query_ledger,
              http_get, python, document_task]


def tasks(n: int, seed: int) -> list[Task]:
    r = random.Random(seed)
    return [r.choice(GENERATORS)(r) for _ in range(n)]


def injected_referral(payload_action: str, mrn: str = "48213377", name: str = "Jane Roe") -> str:
    """A referral whose 'action requested' was written by an attacker."""
    return f"Handle this referral: Referral for {name}, MRN {mrn}. Action requested: {payload_action}"

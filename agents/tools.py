"""The agents' tools: each declared by a pydantic argument model, run as a
small script inside a sandbox under its own policy.

The scripts live in agents/tool_scripts/ and are passed to the sandbox by
their source, with the validated arguments as JSON; the sandbox may not read
the repository."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agents.domain import ICD10, LEDGER
from agents.grounding import COPIED

SCRIPTS = Path(__file__).parent / "tool_scripts"
PYTHON = "/usr/bin/python3"


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LookupCode(_Args):
    code: str = Field(pattern=r"^[A-Za-z][0-9]{2}(\.[0-9A-Za-z]{1,4})?$", description="an ICD-10 code",
                      json_schema_extra=COPIED)


class TriageScore(_Args):
    heart_rate: int = Field(ge=20, le=250, json_schema_extra=COPIED)
    resp_rate: int = Field(ge=4, le=60, json_schema_extra=COPIED)
    temp_c: float = Field(ge=30, le=45, json_schema_extra=COPIED)
    systolic_bp: int = Field(ge=50, le=260, json_schema_extra=COPIED)
    spo2: int = Field(ge=50, le=100, json_schema_extra=COPIED)


class WriteNote(_Args):
    patient_id: str = Field(pattern=r"^P[0-9]{4,8}$", json_schema_extra=COPIED)
    text: str = Field(min_length=1, max_length=2000, json_schema_extra=COPIED)


class ParseLoanApplication(_Args):
    document: str = Field(min_length=1, max_length=20_000, json_schema_extra=COPIED)


class DebtToIncome(_Args):
    monthly_debt: float = Field(ge=0, json_schema_extra=COPIED)
    monthly_income: float = Field(gt=0, json_schema_extra=COPIED)


class QueryLedger(_Args):
    account: str = Field(pattern=r"^[A-Z]{2}-[0-9]{3,6}$", json_schema_extra=COPIED)


class HttpGet(_Args):
    url: str = Field(pattern=r"^https?://", max_length=2000, json_schema_extra=COPIED)


class HttpRequest(_Args):
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    url: str = Field(pattern=r"^https?://", max_length=2000, json_schema_extra=COPIED)
    body: dict[str, Any] | list[Any] | None = Field(None, description="sent as JSON")


class Python(_Args):
    code: str = Field(min_length=1, max_length=20_000)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    args: type[BaseModel]
    policy: str  # the name of the sandbox policy it runs under
    data: Any = None  # bundled data passed to the script as argv[2]
    domain: str = "generic"

    def command(self, args: BaseModel) -> list[str]:
        source = (SCRIPTS / f"{self.name}.py").read_text()
        argv = [PYTHON, "-c", source, args.model_dump_json()]
        if self.data is not None:
            argv.append(json.dumps(self.data))
        return argv


TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (
        Tool("lookup_code", "look up an ICD-10 diagnosis code", LookupCode, "isolated", ICD10, "healthcare"),
        Tool("triage_score", "early-warning score from vital signs", TriageScore, "isolated", None, "healthcare"),
        Tool("write_note", "append a note to a patient's record", WriteNote, "isolated", None, "healthcare"),
        Tool("parse_loan_application", "extract income and debts from an application", ParseLoanApplication,
             "isolated", None, "finance"),
        Tool("debt_to_income", "debt-to-income ratio", DebtToIncome, "isolated", None, "finance"),
        Tool("query_ledger", "balance and last entries of an account", QueryLedger, "isolated", LEDGER, "finance"),
        Tool("http_get", "call an HTTP API (only approved hosts are reachable)", HttpGet, "api"),
        Tool("http_request", "call an HTTP API with a method and a JSON body (only approved endpoints)",
             HttpRequest, "api"),
        Tool("python", "run Python code", Python, "isolated"),
    )
}

"""Realistic field values of the simulated records, drawn from an org's random stream."""

from __future__ import annotations

import random
import string
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from amt_ingest.simulator.population import Slot

__all__ = ["PROGRAMS", "FieldValues"]

_NULLABLE: Final[dict[str, frozenset[str]]] = {
    "Opportunity": frozenset({"Amount", "CloseDate", "Program__c"}),
    "External_Attachment__c": frozenset({"File_URL__c", "Size_Bytes__c"}),
    "Application_Item__c": frozenset({"Due_Date__c", "Notes__c"}),
}
# Fields a multi-record UPDATE (one value for several records) may change.
_STAGES: Final = ("Started", "Submitted", "Admitted", "Enrolled", "Withdrawn")
_TERMS: Final = ("Fall 2027", "Spring 2027", "Fall 2028")
PROGRAMS: Final = (
    "MSc Data Science",
    "MSc Computer Science",
    "MBA",
    "MA Economics",
    "BSc Biology",
    "MEng Robotics",
    "LLM International Law",
    "PhD Physics",
)
_SURNAMES: Final = (
    "Okafor",
    "Nguyen",
    "Garcia",
    "Schmidt",
    "Kowalski",
    "Tanaka",
    "Haddad",
    "Silva",
    "Murphy",
    "Ivanova",
    "Mensah",
    "Larsen",
    "Chen",
    "Patel",
    "Rossi",
)
_DOC_TYPES: Final = {
    "Transcript": "Official transcript.pdf",
    "Passport": "Passport scan.pdf",
    "CV": "Curriculum vitae.pdf",
    "Reference Letter": "Reference letter.pdf",
    "Personal Statement": "Personal statement.docx",
    "Test Score Report": "Test score report.pdf",
}
_DOC_STATUSES: Final = ("Requested", "Received", "Under Review", "Accepted", "Rejected")
_ITEM_TYPES: Final = (
    "Reference",
    "Interview",
    "Application Fee",
    "Test Score",
    "Essay",
    "Transcript",
)
_ITEM_STATUSES: Final = ("Open", "In Progress", "Complete", "Waived")
_NOTES: Final = (
    "Reminder sent to referee",
    "Waived by admissions officer",
    "Awaiting payment confirmation",
    "Interview scheduled",
    "Score report received from testing agency",
    "Applicant asked for an extension",
    "Escalated to program director",
)

_NULL_RATE: Final = 0.15  # chance that an updated nullable field becomes null


class FieldValues:
    """Realistic field values of one org's records (drawn from the org's random stream)."""

    def __init__(
        self,
        rng: random.Random,
        *,
        programs: list[str],
        accounts: list[str],
        by_topic: dict[str, list[Slot]],
    ) -> None:
        self.rng = rng
        self._programs = programs
        self._accounts = accounts
        self._by_topic = by_topic

    def _parent(self) -> str:
        pool = self._by_topic["Opportunity"]
        for _ in range(10):
            slot = self.rng.choice(pool)
            if slot.created and not slot.deleted:
                return slot.id
        return self.rng.choice(pool).id

    def _date(self, first: date, days: int) -> str:
        return (first + timedelta(days=self.rng.randrange(days))).isoformat()

    def initial(self, slot: Slot) -> dict[str, Any]:
        rng = self.rng
        if slot.topic == "Opportunity":
            program = rng.randrange(len(PROGRAMS))
            name = (
                f"{rng.choice(_TERMS)} - {PROGRAMS[program]} - "
                f"{rng.choice(string.ascii_uppercase)}. {rng.choice(_SURNAMES)}"
            )
            return {
                "Name": name,
                "StageName": "Started",
                "CloseDate": self._date(date(2027, 1, 1), 365),
                "AccountId": rng.choice(self._accounts),
                "Amount": self.new(slot, "Amount") if rng.random() < 0.6 else None,
                "Program__c": self._programs[program],
            }
        if slot.topic == "External_Attachment__c":
            doc_type = rng.choice(list(_DOC_TYPES))
            return {
                "Name": _DOC_TYPES[doc_type],
                "Opportunity__c": self._parent(),
                "Document_Type__c": doc_type,
                "File_URL__c": f"https://files.example.edu/passport/{slot.id}/v1",
                "Status__c": "Requested",
                "Size_Bytes__c": self.new(slot, "Size_Bytes__c"),
            }
        item_type = rng.choice(_ITEM_TYPES)
        return {
            "Name": f"{item_type} {rng.randint(1, 3)}",
            "Opportunity__c": self._parent(),
            "Item_Type__c": item_type,
            "Status__c": "Open",
            "Due_Date__c": self._date(date(2026, 12, 1), 180),
            "Notes__c": rng.choice(_NOTES) if rng.random() < 0.3 else None,
        }

    def new(self, slot: Slot, name: str) -> Any:
        rng = self.rng
        if name in _NULLABLE[slot.topic] and rng.random() < _NULL_RATE:
            return None
        match name:
            case "StageName":
                return rng.choice(_STAGES)
            case "Amount":
                return float(rng.randrange(5000, 45001, 250))
            case "CloseDate":
                return self._date(date(2027, 1, 1), 365)
            case "Program__c":
                return rng.choice(self._programs)
            case "AccountId":
                return rng.choice(self._accounts)
            case "Name" if slot.topic == "Opportunity":
                return (
                    f"{rng.choice(_TERMS)} - {rng.choice(PROGRAMS)} - "
                    f"{rng.choice(string.ascii_uppercase)}. {rng.choice(_SURNAMES)}"
                )
            case "Name" if slot.topic == "External_Attachment__c":
                return rng.choice(list(_DOC_TYPES.values()))
            case "Name":
                return f"{rng.choice(_ITEM_TYPES)} {rng.randint(1, 3)}"
            case "Document_Type__c":
                return rng.choice(list(_DOC_TYPES))
            case "File_URL__c":
                slot.version += 1
                return f"https://files.example.edu/passport/{slot.id}/v{slot.version}"
            case "Size_Bytes__c":
                return rng.randint(20_000, 5_000_000)
            case "Status__c" if slot.topic == "External_Attachment__c":
                return rng.choice(_DOC_STATUSES)
            case "Status__c":
                return rng.choice(_ITEM_STATUSES)
            case "Item_Type__c":
                return rng.choice(_ITEM_TYPES)
            case "Due_Date__c":
                return self._date(date(2026, 12, 1), 180)
            case "Notes__c":
                return rng.choice(_NOTES)
        raise AssertionError(f"no generator for {slot.topic}.{name}")

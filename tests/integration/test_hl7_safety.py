"""``vitalcast ingest hl7`` into real PostgreSQL: each result under its own patient, no
patient data in error output, empty input named.

Each case was a defect: a second PID's results stored under the first patient, an
unreadable MSH echoing the PID in the error line, an empty NM value reported as
non-numeric, an empty file reported as a successful run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, func, select

from tests.hl7_samples import ADT_A01, ORU_R01, ORU_TWO_PATIENTS, WRONG_SEPARATOR
from vitalcast.cli import main
from vitalcast.clinical.tables import Encounter, Observation, Patient
from vitalcast.config import load_settings
from vitalcast.security.crypto import cipher_from_settings


@pytest.fixture
def ingest(pg_url: str, tmp_path: Path) -> Callable[..., Result]:
    """Write ``text`` to a file and run ``vitalcast ingest hl7`` on it."""
    env = {"VITALCAST_DATABASE_URL": pg_url, "VITALCAST_DATA_DIR": str(tmp_path / "var")}

    def invoke(text: str, *options: str, name: str = "in.hl7") -> Result:
        path = tmp_path / name
        path.write_text(text)
        args = ["ingest", "hl7", str(path), "--no-rescore", *options]
        result = CliRunner().invoke(main, args, env=env)
        assert "Traceback" not in result.output
        return result

    return invoke


def _rows(pg_url: str, query: Any) -> list[tuple[Any, ...]]:
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            return sorted(tuple(row) for row in conn.execute(query))
    finally:
        engine.dispose()


def _results(pg_url: str) -> list[tuple[Any, ...]]:
    """(patient sex, value, hour) of every stored observation."""
    query = select(Patient.sex, Observation.value, Observation.effective_at).join(
        Patient, Patient.id == Observation.patient_id
    )
    return [(sex, value, at.hour) for sex, value, at in _rows(pg_url, query)]


def test_each_patient_group_of_an_oru_keeps_its_own_results(
    ingest: Callable[..., Result], pg_url: str
) -> None:
    result = ingest(ORU_TWO_PATIENTS, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["received"], report["stored"]) == (4, 4)  # two PIDs, two OBX
    # Cat (F) has 61/min, Dan (M) 62/min, each at their own OBR-7 time.
    assert _results(pg_url) == [("female", 61.0, 11), ("male", 62.0, 12)]


def test_an_obx_of_the_second_group_never_takes_the_first_groups_obr_time(
    ingest: Callable[..., Result], pg_url: str
) -> None:
    text = ORU_TWO_PATIENTS.replace("OBR|1|||x|||20240503120000+0000\r", "")
    result = ingest(text, "--json")
    assert result.exit_code == 0, result.output
    rejects = json.loads(result.stdout)["rejects"]
    assert [(r["location"], r["reason_code"]) for r in rejects] == [
        ("in.hl7:msg[1]#E1.OBX[2]", "no_time")
    ]
    assert _results(pg_url) == [("female", 61.0, 11)]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        # An ADT is about one patient: a second PID (or a second visit) cannot be placed.
        (
            ADT_A01 + "\rPID|2||MRN0002^^^HOSP^MR||Other^Bob||19700101|M",
            "ADT^A01 has 2 PID segments",
        ),
        (ADT_A01 + "\r" + ADT_A01.split("\r")[3], "ADT^A01 has 2 PV1 segments"),
        # Results before any PID belong to nobody known; never to the PID after them.
        (
            ORU_R01.replace("PID|1||", "OBX|9|NM|8867-4^HR^LN||70|/min|||||F\rPID|1||", 1),
            "OBX before the first PID",
        ),
    ],
)
def test_messages_whose_results_cannot_be_placed_store_nothing(
    ingest: Callable[..., Result], pg_url: str, text: str, problem: str
) -> None:
    result = ingest(text)
    assert result.exit_code == 2, result.output
    assert problem in result.stderr
    assert "nothing was stored" in result.stderr
    for table in (Patient, Encounter, Observation):
        assert _rows(pg_url, select(func.count()).select_from(table)) == [(0,)]
    for identifier in ("MRN0001", "MRN0002", "Testpatient", "Other"):
        assert identifier not in result.output


def test_an_unreadable_msh_is_named_without_repeating_the_message(
    ingest: Callable[..., Result],
) -> None:
    result = ingest(WRONG_SEPARATOR)
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: in.hl7:msg[1]: not an HL7 v2 message")
    assert "MSH-2" in line
    for phi in ("MRN4242", "Secretname", "Jane", "19600101"):
        assert phi not in result.output


def test_an_empty_numeric_value_is_no_value(ingest: Callable[..., Result]) -> None:
    text = ORU_R01.replace("||92|/min|", "|||/min|").replace("||abc|/min|", "|||/min|")
    result = ingest(text, "--json")
    reasons = {r["location"][-6:]: r["reason_code"] for r in json.loads(result.stdout)["rejects"]}
    assert reasons["OBX[1]"] == "no_value"
    assert reasons["OBX[4]"] == "no_value"


def test_a_number_not_in_ascii_digits_is_quarantined_not_read(
    ingest: Callable[..., Result], pg_url: str
) -> None:
    """float() reads "9_5" as 95 and "٣٤" as 34: an NM value with a digit separator or
    digits of another script was stored as a number the sender never wrote in HL7's NM
    notation. Only ASCII decimal notation is a number."""
    text = ORU_R01.replace("||92|/min|", "||9_5|/min|").replace("||101.3|", "||\u0663\u0664|")
    result = ingest(ADT_A01 + "\r" + text, "--json")
    assert result.exit_code == 0, result.output
    rejects = json.loads(result.stdout)["rejects"]
    reasons = {r["location"][-6:]: (r["reason_code"], r["reason"]) for r in rejects}
    assert reasons["OBX[1]"] == ("non_numeric_value", "8867-4: NM value is not an exact number")
    assert reasons["OBX[2]"] == ("non_numeric_value", "8310-5: NM value is not an exact number")
    assert 95.0 not in [value for _sex, value, _hour in _results(pg_url)]


@pytest.mark.parametrize("text", ["", "\r\n  \n"])
def test_an_empty_file_exits_2_as_for_fhir(ingest: Callable[..., Result], text: str) -> None:
    result = ingest(text, name="empty.hl7")
    assert result.exit_code == 2, result.output
    assert "error: empty.hl7: no HL7 v2 message in the file" in result.stderr


def _potassium(stamp: str, control: str, value: str, status: str, order: str = "FL55") -> str:
    """An ORU^R01 of one potassium result under filler order ``order``, sent at ``stamp``."""
    return (
        f"MSH|^~\\&|LAB|HOSP|VC|HOSP|{stamp}||ORU^R01|{control}|P|2.5\r"
        "PID|1||MRNK1^^^HOSP^MR||Kay^Kim||19600101|F\r"
        f"OBR|1|PL55|{order}^LAB|CHEM|||20240301125500+0000\r"
        f"OBX|1|NM|2823-3^Potassium^LN||{value}|mmol/L|||||{status}\r"
        f"OBX|2|NM|2951-2^Sodium^LN||140|mmol/L|||||{status}\r"
    )


def test_a_corrected_result_replaces_the_value_it_corrects(
    ingest: Callable[..., Result], pg_url: str
) -> None:
    """A potassium of 7.9 corrected (OBX-11 C) to 3.9 under the same order was stored
    beside it at the same time: a model read either. The newer message's value replaces
    the stored one; the same messages again change nothing; an older one arriving late
    overwrites nothing; another order's result at the same time stays its own."""
    first = _potassium("20240301130000+0000", "K1", "7.9", "F")
    fixed = _potassium("20240301140000+0000", "K2", "3.9", "C")
    other = _potassium("20240301150000+0000", "K3", "4.4", "F", order="FL99")
    assert ingest(first + fixed + other).exit_code == 0
    query = select(Observation.code, Observation.value)
    expected = [("2823-3", 3.9), ("2823-3", 4.4), ("2951-2", 140.0), ("2951-2", 140.0)]
    assert _rows(pg_url, query) == expected
    again = ingest(first + fixed + other, "--json")
    assert json.loads(again.stdout)["stored"] == 0
    assert ingest(first, name="late.hl7").exit_code == 0
    assert _rows(pg_url, query) == expected


def test_a_byte_order_mark_does_not_cost_the_first_message(pg_url: str, tmp_path: Path) -> None:
    """A file saved by a Windows tool begins with a UTF-8 BOM: its first message (here
    the admission) was refused as not beginning with MSH, exit 2."""
    path = tmp_path / "bom.hl7"
    path.write_bytes(b"\xef\xbb\xbf" + ADT_A01.encode())
    env = {"VITALCAST_DATABASE_URL": pg_url, "VITALCAST_DATA_DIR": str(tmp_path / "var")}
    args = ["ingest", "hl7", str(path), "--no-rescore", "--json"]
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["stored"] == 2  # the patient and the stay
    assert len(_rows(pg_url, select(Encounter.id))) == 1


def test_a_message_declaring_latin_1_in_msh_18_is_read_in_it(
    ingest: Callable[..., Result], pg_url: str, tmp_path: Path
) -> None:
    """A Latin-1 system that says so (MSH-18 ``8859/1``) had every message with an
    accented name refused as not UTF-8; undeclared, it still is, with the way out named."""
    declared = ADT_A01.replace("|P|2.5\r", "|P|2.5||||||8859/1\r", 1).replace("Alpha", "Zoë")
    path = tmp_path / "latin1.hl7"
    path.write_bytes(declared.encode("latin-1"))
    env = {"VITALCAST_DATABASE_URL": pg_url, "VITALCAST_DATA_DIR": str(tmp_path / "var")}
    runner = CliRunner()
    result = runner.invoke(main, ["ingest", "hl7", str(path), "--no-rescore", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["stored"] == 2
    path.write_bytes(ADT_A01.replace("Alpha", "Zoë").encode("latin-1"))
    result = runner.invoke(main, ["ingest", "hl7", str(path), "--no-rescore"], env=env)
    assert result.exit_code == 2
    assert "must declare it in MSH-18 (8859/1 for Latin-1)" in result.output


def test_an_update_with_a_bare_pid_keeps_what_it_did_not_send(
    ingest: Callable[..., Result], pg_url: str, tmp_path: Path
) -> None:
    """An A03 whose PID holds only the MRN (PID-5, -7, -8 empty: not sent) turned the
    stored patient's sex to unknown (a model feature) and wiped the name and birth date.
    Empty fields are kept from the stored version; fields sent replace it."""
    bare = (
        "MSH|^~\\&|ADT|HOSP|VITALCAST|HOSP|20240305120000||ADT^A03|ADM0002|P|2.5\r"
        "PID|1||MRN0001^^^HOSP^MR\r"
        "PV1|1|I|MICU^12^A||||||||||||||||V0001|||||||||||||||||||||||||"
        "20240301075500+0000|20240305113000+0000"
    )
    renamed = (
        "MSH|^~\\&|ADT|HOSP|VITALCAST|HOSP|20240306120000||ADT^A08|ADM0003|P|2.5\r"
        "PID|1||MRN0001^^^HOSP^MR||Newname^Alpha|||M"
    )
    assert ingest(ADT_A01 + "\r" + bare).exit_code == 0
    settings = load_settings(env="test", data_dir=tmp_path / "var", database_url=pg_url)
    cipher = cipher_from_settings(settings)

    def stored() -> tuple[str, dict[str, str]]:
        query = select(Patient.sex, Patient.identifiers_enc, Patient.key_id, Patient.public_id)
        ((sex, blob, key_id, public_id),) = _rows(pg_url, query)
        return sex, cipher.decrypt(blob, key_id, context=f"patient:{public_id}")

    sex, ids = stored()
    assert (sex, ids["name"], ids["birth_date"]) == ("female", "Alpha Testpatient", "1950-01-02")
    assert _rows(pg_url, select(Encounter.discharged_at)) != [(None,)]  # the A03 applied
    assert ingest(renamed, name="a08.hl7").exit_code == 0
    sex, ids = stored()
    assert (sex, ids["name"], ids["birth_date"]) == ("male", "Alpha Newname", "1950-01-02")


def test_a_late_admission_fills_what_an_earlier_bare_discharge_left_unknown(
    ingest: Callable[..., Result], pg_url: str, tmp_path: Path
) -> None:
    """An A03 with a PID of only the MRN arrives before its A01: the patient is created
    with sex unknown, and the A01, older by MSH-7, changed nothing, for good. It now fills
    what is missing (never what is stored), and the same files again change nothing."""
    bare = (
        "MSH|^~\\&|ADT|HOSP|VITALCAST|HOSP|20240305120000||ADT^A03|ADM0002|P|2.5\r"
        "PID|1||MRN0001^^^HOSP^MR|||||M\r"
        "PV1|1|I|MICU^12^A||||||||||||||||V0001|||||||||||||||||||||||||"
        "20240301075500+0000|20240305113000+0000"
    )
    assert ingest(bare, name="a03.hl7").exit_code == 0
    assert ingest(ADT_A01, name="a01.hl7").exit_code == 0
    settings = load_settings(env="test", data_dir=tmp_path / "var", database_url=pg_url)
    cipher = cipher_from_settings(settings)
    query = select(Patient.sex, Patient.identifiers_enc, Patient.key_id, Patient.public_id)
    ((sex, blob, key_id, public_id),) = _rows(pg_url, query)
    ids = cipher.decrypt(blob, key_id, context=f"patient:{public_id}")
    # The A03's sex (M) is stored and stays; the A01 fills the name and birth date, and
    # with the birth date the age at admission of the stay the A03 stored without one.
    assert (sex, ids["name"], ids["birth_date"]) == ("male", "Alpha Testpatient", "1950-01-02")
    assert _rows(pg_url, select(Encounter.age_years)) == [(74.0,)]
    for name, text in (("a03.hl7", bare), ("a01.hl7", ADT_A01)):
        again = ingest(text, "--json", name=name)
        assert json.loads(again.stdout)["stored"] == 0

"""The UCI Cleveland heart-disease table as a data team would hand it to the `tabular`
task: a CSV with a header and an id column, and the YAML task file that describes it."""

from __future__ import annotations

from pathlib import Path

# heart-disease.names, attributes 3, 4, 9, 10, 12, 16, 19, 32, 38, 40, 41, 44, 51, 58.
COLUMNS = [
    "age",
    "sex",
    "cp",
    "trestbps",
    "chol",
    "fbs",
    "restecg",
    "thalach",
    "exang",
    "oldpeak",
    "slope",
    "ca",
    "thal",
    "num",
]
TASK_YAML = """\
label: num
positive: ["1", "2", "3", "4"]   # angiographic disease: >= 50 % narrowing in any vessel
id_column: patient
na_values: ["?"]
features:
  numeric: [age, trestbps, chol, thalach, oldpeak, ca]
  categorical: [sex, cp, fbs, restecg, exang, slope, thal]
labels:   # heart-disease.names; what explanations show instead of the column names
  age: [Age, years]
  trestbps: [Resting blood pressure, mmHg]
  chol: [Serum cholesterol, mg/dL]
  thalach: [Maximum heart rate achieved, /min]
  oldpeak: ST depression induced by exercise
  ca: Major vessels coloured by fluoroscopy
  sex: Sex
  cp: Chest pain type
  fbs: Fasting blood sugar above 120 mg/dL
  restecg: Resting ECG
  exang: Exercise-induced angina
  slope: Slope of the peak exercise ST segment
  thal: Thallium scan
values:
  sex: {"0.0": female, "1.0": male}
  cp: {"1.0": typical angina, "2.0": atypical angina, "3.0": non-anginal pain, "4.0": asymptomatic}
  fbs: {"0.0": "no", "1.0": "yes"}
  restecg: {"0.0": normal, "1.0": ST-T wave abnormality, "2.0": left ventricular hypertrophy}
  exang: {"0.0": "no", "1.0": "yes"}
  slope: {"1.0": upsloping, "2.0": flat, "3.0": downsloping}
  thal: {"3.0": normal, "6.0": fixed defect, "7.0": reversible defect}
"""


def heart_task_files(shared_data: Path, folder: Path) -> tuple[Path, Path]:
    """Write the task file and the CSV (303 patients) into ``folder``."""
    raw = (shared_data / "uci-heart-disease-cleveland" / "processed.cleveland.data").read_text()
    lines = [ln for ln in raw.splitlines() if ln.strip()]
    csv = folder / "cleveland.csv"
    csv.write_text(
        "patient,"
        + ",".join(COLUMNS)
        + "\n"
        + "".join(f"p{i},{ln}\n" for i, ln in enumerate(lines))
    )
    task_file = folder / "heart.yaml"
    task_file.write_text(TASK_YAML)
    return task_file, csv

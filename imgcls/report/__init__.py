"""The evaluation report: one self-contained HTML file (document), its plots (figures),
picture galleries (gallery), Grad-CAM (explain), saved predictions, and runs (rebuild, compare)."""

from imgcls.report.document import ReportInputs, write_report, write_report_from
from imgcls.report.predictions import Predictions, load_predictions, save_predictions

__all__ = ["Predictions", "ReportInputs", "load_predictions", "save_predictions", "write_report", "write_report_from"]

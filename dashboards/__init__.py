"""Method-comparison views of finished studies: `automix report` (HTML + PNG, logged to MLflow).

`automix.dashboards.data` loads a study from the Optuna storage (`mlflow_data` from its MLflow
experiment), `views` draws one plotly figure per view, `report` assembles and logs them.
"""

__all__ = ["build_report", "load_study_data"]


def __getattr__(name: str):  # lazy: plotly and pandas load only when a report is made
    if name == "build_report":
        from automix.dashboards.report import build_report  # lazy: plotly and pandas load only when a report is made

        return build_report
    if name == "load_study_data":
        from automix.dashboards.data import load_study_data  # lazy: plotly and pandas load only when a report is made

        return load_study_data
    raise AttributeError(name)

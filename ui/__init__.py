"""Streamlit-only helpers shared by the dashboard's pages (the logic lives in ``services/``)."""

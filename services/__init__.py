"""All logic of the nutrition-table dashboard. Nothing here imports streamlit."""

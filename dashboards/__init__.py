"""Streamlit dashboard of the LA-DNN platform; start it with `ladnn dashboard`."""

"""FinOps on top of the reports: budgets, alerts and their delivery, anomalies, model-switch
suggestions, insights, the FinOps report and FOCUS export. Takes the index; gives alerts and advice."""

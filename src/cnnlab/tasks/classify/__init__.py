"""Classification: train, evaluate and predict (the task object is cnnlab.tasks.classification)."""

"""rlhfless: serverless RLHF."""

"""Model code shared by training (tailor.train) and inference (tailor.infer); imports neither."""

"""Scoring a model on questions with reference answers: with and without retrieval, for
`tailor eval` (see evaluate.qa)."""

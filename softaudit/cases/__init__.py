"""Cases, the pipeline's first stage: the case model, the reader of case files, the exact inputs a
case generates, and the corpus of cases ``softaudit search`` found."""

"""What a study shows its user: views built from the study and the tree, `status`, `tree`, the
pandas export and the branch plot. Read-only: nothing here changes a study."""

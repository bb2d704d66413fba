"""What people tell Deskmate about its answers and about themselves: who may rate and review
(roles), ratings and corrections, the rated turns exported for training, and forgetting a
person everywhere."""

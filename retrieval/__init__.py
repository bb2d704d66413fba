"""Everything up to "here are the right passages for this question, for this user".

This package never imports `bot`: it takes plain arguments, so it can be used from a batch job
or a notebook as easily as from the running service.
"""

"""The OTP behaviours: GenServer, Supervisor, DynamicSupervisor.

Private: the public names are re-exported by :mod:`otpy`.
"""

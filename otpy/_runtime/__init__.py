"""The process layer: OS processes with mailboxes, links, monitors and names.

Private: the public names are re-exported by :mod:`otpy`.
"""

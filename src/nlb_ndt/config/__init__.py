"""Settings: yacs defaults with units, typed configs, templates, profiles, search spaces, layout.

Modules: `defaults` (every key and its unit), `typed` (the frozen views the code reads),
`render` (templates -> rendered configs; profiles), `search_space`, `layout` (the files of
run, trial and experiment folders, and their readers). Reads no files but its own templates
and profiles and the configs it is given.
"""

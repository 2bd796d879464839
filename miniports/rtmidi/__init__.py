"""The rtmidi miniport: any MIDI port python-rtmidi can open becomes a filter.

`miniport` is the miniport (registered as "rtmidi"), `watch` the port watcher
process the kernel's hot-plug starts (`python -m miniports.rtmidi.watch`).
Importing the package imports nothing else, python-rtmidi included.
"""

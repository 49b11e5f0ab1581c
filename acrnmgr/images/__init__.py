"""Bootable guests built from Debian's packages: the test suite's guest (build.py) and the image
`acrnmgr image build` makes for users (user.py). A leaf: it imports nothing else of acrnmgr."""

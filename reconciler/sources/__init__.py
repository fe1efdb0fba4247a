"""Where specs come from: files and directories (:mod:`.files`), git refs and tracked
branches (:mod:`.git`), and the daemon's sources built on them (:mod:`.base`,
:mod:`.directory`, :mod:`.tracked_git`)."""

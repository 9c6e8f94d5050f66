"""The daemon: ``assemble`` builds the parts from a config, ``stages`` hold each tick's work, ``control`` the
pause and the fleet's commands, ``telemetry`` what the daemon says about itself, ``pipeline`` the lifecycle."""

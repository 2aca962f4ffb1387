"""The search (``softaudit search``): the engine that hunts for a failing input, the mutations it
explores with, and the shrinker that makes a failing input small."""

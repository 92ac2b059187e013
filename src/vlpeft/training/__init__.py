"""The shared training loops (cached features and pixels), schedules, precision and distributed helpers.

Methods own their math; this package owns the loop. It sits below the methods: it never imports
them, so a method may call the loop and the engine may run the method.
"""

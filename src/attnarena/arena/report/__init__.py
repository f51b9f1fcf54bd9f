"""Reporting from the store (read only): each section's table and plot side by side in one
module (leaderboard, speed, compression, linearization), the page that gathers them, and
the answer to "which mechanism for my length and budget?"."""

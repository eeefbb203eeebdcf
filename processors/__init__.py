"""tierstream.processors"""

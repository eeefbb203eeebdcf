"""tierstream.sinks"""

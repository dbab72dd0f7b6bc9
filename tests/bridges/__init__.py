"""Tests of the PLC bridges (Modbus TCP, OPC UA) against real servers on 127.0.0.1."""
